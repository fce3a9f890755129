#!/usr/bin/env python3
"""Per-cell Ishigami field (as examples/ishigami); melissa-sa or .npy output.

    python e2e_sim.py --cells N --steps T [--out PATH.npy] x1 x2 x3
"""
import os
import sys

import numpy as np


def main(argv):
    cells, steps, out, x = 1000, 5, None, []
    it = iter(argv)
    for tok in it:
        if tok == "--cells":
            cells = int(next(it))
        elif tok == "--steps":
            steps = int(next(it))
        elif tok == "--out":
            out = next(it)
        else:
            x.append(float(tok))
    x1, x2, x3 = x
    frac = np.linspace(0.0, 1.0, cells)
    a, b = 7.0 + (2.0 - 7.0) * frac, 0.1 + (0.3 - 0.1) * frac
    base = np.sin(x1) + a * np.sin(x2) ** 2 + b * x3 ** 4 * np.sin(x1)
    if out is None:
        from melissa_sa.client import melissa_finalize, melissa_init, melissa_send
        melissa_init("y", cells, None)
        for t in range(steps):
            melissa_send("y", base * (1.0 + t))
        melissa_finalize()
    else:
        history = np.empty((steps, cells))
        for t in range(steps):
            history[t] = base * (1.0 + t)
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            np.save(f, history)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1:])
