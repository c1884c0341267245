"""The command line, `python -m pcam_core <command>`: parsing and one-line errors, no work of its own.

- `main`: the parser and the small commands (demo, info, pack, bench); `main(argv)` is the entry point.
- `common`: the progress bar, the errors a user can cause, rank-aware dataset opening.
- `train`, `predict`, `slide`, `embed`, `labels`: the commands of each concern and their flags.
"""
