#!/usr/bin/env python
"""Build tiny, randomly initialised Qwen2.5-VL and Gemma3 checkpoints offline: OUT_DIR/tiny-qwen2.5-vl and
OUT_DIR/tiny-gemma3. The builder lives in localjudge.testing.tiny_vlms (tests and benchmarks use it too)."""

from localjudge.testing.tiny_vlms import main

if __name__ == "__main__":
    main()
