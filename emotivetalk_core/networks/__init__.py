"""The paper's networks, one module per box of its figure: V-AID (``vaid``), Di-CTE (``dicte``),
ETHD (``ethd``) with its EDI adapters (``edi``), Mapping (``mapping``), the visual encoders
(``encoders``) and the frozen speech encoder (the subpackage ``speech``)."""
