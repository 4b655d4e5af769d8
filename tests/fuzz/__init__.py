"""Fuzzing neocaffe's file readers: valid seed files of every kind (``seeds``), mutated
(``mutate``), each loaded as a user's run would load it in a child process (``child``) under a
per-case timeout and a memory limit (``runner``), so a crash or a hang is reported, never suffered.
The bounded run is ``tests/io/test_fuzz_inputs.py``; the larger one ``benchmarks/fuzz_inputs.py``."""
