"""Configure JAX before mbi is imported: 64-bit floats (mbi stalls in float32 on large totals) and no persistent
compilation cache (mbi compiles many small programs). Import this module first wherever mbi is used."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_enable_compilation_cache", False)
