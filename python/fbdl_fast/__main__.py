"""`python -m fbdl_fast`: the same command line as `fbdl-fast`."""

from fbdl_fast.cli import main

raise SystemExit(main())
