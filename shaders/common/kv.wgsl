// The KV cache element type: f16 with KV_F16 (half the memory and attention bandwidth; this file
// must be included first, since `enable` precedes all declarations), f32 otherwise.
#ifdef KV_F16
enable f16;
alias kv = f16;
#else
alias kv = f32;
#endif
