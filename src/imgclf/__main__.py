"""`python -m imgclf` is the same CLI, so `torchrun -m imgclf train ...` works."""

from imgclf.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
