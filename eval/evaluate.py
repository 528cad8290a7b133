"""Entry point kept for ``python eval/evaluate.py ...``: the command lives in genkd/evaluate.py (``genkd evaluate``)."""
from genkd.evaluate import main

if __name__ == "__main__":
    main()
