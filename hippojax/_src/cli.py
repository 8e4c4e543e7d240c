"""The ``hippojax`` command line."""

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="hippojax")
  parser.parse_args(argv)
  return 0


if __name__ == "__main__":
  sys.exit(main())
