from pcam_core.cli import main

raise SystemExit(main())
