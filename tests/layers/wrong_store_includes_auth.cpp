// Compiled in the store layer: a service must not include a service it does
// not link (auth uses store, not the other way round).
#include "auth/jwt.hpp"
