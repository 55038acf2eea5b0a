"""Building blocks shared by every optimizer: shape rules, accumulators, features, clipping."""
