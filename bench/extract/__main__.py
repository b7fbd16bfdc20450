import sys

from bench.extract.run import main

sys.exit(main())
