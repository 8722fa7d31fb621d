"""``python -m rankitect.search.sampling --store URL``: start one trial worker."""

from rankitect.search.sampling.worker import main

main()
