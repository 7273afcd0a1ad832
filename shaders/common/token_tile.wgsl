// Tokens (or token-expert slots) per tile: with 4, each weight load serves 4 of them. ONE_TOKEN
// serves passes of a single row, where the tile would only add reduction work. Each token's sums
// are accumulated in the same order either way, so results do not depend on the variant.
#ifdef ONE_TOKEN
const TT: u32 = 1u;
#else
const TT: u32 = 4u;
#endif
