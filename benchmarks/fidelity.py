"""The known-truth fidelity benchmark (issue #6) as a script: the same as `dreamfusion bench fidelity`.

    python benchmarks/fidelity.py --device cuda --out docs/results/fidelity
    python benchmarks/fidelity.py --preset cpu --only sphere torus --seeds 0 --steps 400 --out /tmp/fid

Every flag of `dreamfusion bench fidelity --help` works here; the code is dreamfusion.bench.runner.
"""

from __future__ import annotations

import sys

from dreamfusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "fidelity", *sys.argv[1:]]))
