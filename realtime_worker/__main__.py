import sys

from realtime_worker.entry import main

sys.exit(main())
