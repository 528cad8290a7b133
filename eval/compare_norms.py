"""Entry point kept for ``python eval/compare_norms.py ...``: the tool lives in genkd/compare_norms.py
(``python -m genkd.compare_norms``), a use of genkd/tables.py (``genkd compare``)."""
from genkd.compare_norms import main

if __name__ == "__main__":
    main()
