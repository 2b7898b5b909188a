"""The stages a recipe names (registry.py maps each name to its module, imported when a recipe uses it) and the
contract they share (base.py); what one stage hands a later one is a typed record (handoffs.py)."""
