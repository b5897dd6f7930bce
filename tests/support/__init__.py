"""Test helpers (not tests). `tests/` is on sys.path (pyproject's pytest `pythonpath`), so
tests import them as `support.<module>`:

- support.cli: how to run the CLI (`run`, `run_llava`, `clean_env`, `Terminal` for a real
  pseudo-terminal, `one_line_error` / `assert_one_line_error`).
- support.tokenizers: how to make a tokenizer (trained tiny ones, the real ones from ../shared).
- support.checkpoints: how to make a tiny random checkpoint of each family, written by
  transformers 4.48.3 (one module per family: next_video, llava (1.5 and Video-LLaVA), next,
  onevision; common holds the hub chat templates).
- support.parity: the parity harness (our pipeline against the reference, stage by stage).
- support.media: real media files made on the fly, a local HTTP server, a per-test time limit.
- support.fakehub: a local HTTP server that speaks the Hub's URL scheme.
- support.adversarial: run `llava` on hostile input and check it fails cleanly.
- support.fullsize_configs: reconstructed full-size configs of published checkpoints.

Shared fixtures (env, media_files, tiny_model, media_dir, clip, engine) are in tests/conftest.py.
"""
