"""Operations: the model registry, the ledger and the mapping of incoming imagery."""
