"""The checks of the Python client scripts: each prints one line, a failure is reported rather than
raised, and `finish()` prints the closing "N passed, N failed" and exits non-zero on a failure."""

import sys

results = []


def check(name):
    def run(fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok    {name}")
        except Exception as e:  # a failed check is reported, not raised
            results.append((name, e))
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
        return fn

    return run


def finish():
    failed = [name for name, error in results if error]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
