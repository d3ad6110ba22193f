"""Model cards and label lists, installed as the package localjudge.model_cards (see pyproject.toml)."""
