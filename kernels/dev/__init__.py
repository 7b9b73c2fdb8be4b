"""Candidate and superseded kernels, kept for study and A/B timing: registered only when
CONVGPU_DEV=1, and then only by name (algo="..."), never picked by algo="auto". Each module
says what it is and the measurement that put it here (bench/NOTES.md has the numbers)."""
