import sys

from marketfeed.sim.cli import main

sys.exit(main(sys.argv[1:]))
