"""Parameter-server micro-benchmarks (P1 round trip, P2 replica vs local, P4 demo to 25%).

    python bench/bench_ps.py [--quick] [--p4] [--shards S] [--out FILE]

The code lives in `distinception.bench.roundtrip`; the comparisons against the alternatives
are `distinception bench throughput|convergence|staleness|gpu`.
"""

import sys

from distinception.bench.roundtrip import main

if __name__ == "__main__":
    sys.exit(main())
