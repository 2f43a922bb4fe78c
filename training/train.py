"""`accelerate launch training/train.py --config training/configs/X.yaml [--set key=value ...]`: the same code as `genkit train`."""

import sys

from genkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
