"""kto-inspect: look at a cache or a run before trusting it (summary, verify, rows, run, score).

Each command is a module with a plain function that returns data (tests call those); cli.py
only parses flags, prints, and maps errors to exit codes.
"""
