"""A one-line progress bar on stderr, for the sampler and the inversions."""
import sys


class Progress:
    """Counts updates; prints "label i/total" in place."""

    def __init__(self, total, enabled=True, label="sampling"):
        self.total, self.enabled, self.label, self.i = total, enabled, label, 0

    def update(self, n=1):
        self.i += n
        i = self.i
        if self.enabled:
            end = "\n" if i == self.total else ""
            print(f"\r{self.label} {i}/{self.total}", end=end, file=sys.stderr, flush=True)
