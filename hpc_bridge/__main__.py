from hpc_bridge.cli import main

raise SystemExit(main())
