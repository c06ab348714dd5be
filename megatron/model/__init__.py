"""Our GPT, built on megatron-core tensor-parallel layers, plus its DeepSpeed pipeline form."""
