"""The tools behind the `convgpu` command: cli (the parser and the commands), check (every
implementation against the reference), bench (timings against cuDNN / cuBLAS), shapes (the
networks' layer suites and shape specs), cliutil (argument parsing helpers)."""
