from pcam_core.cli.main import main

raise SystemExit(main())
