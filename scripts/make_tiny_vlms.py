#!/usr/bin/env python
"""Build tiny, randomly initialised Qwen2.5-VL and Gemma3 checkpoints offline: OUT_DIR/tiny-qwen2.5-vl and
OUT_DIR/tiny-gemma3, with the released tokenizers, vocabulary sizes, image-token counts and chat templates
(`--vocabulary bpe512`: a 512-token BPE instead, for speed only). The builder lives in localjudge.testing.tiny_vlms
(tests and benchmarks use it too)."""

from localjudge.testing.tiny_vlms import main

if __name__ == "__main__":
    main()
