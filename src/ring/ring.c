/* ring.c — see ring.h (implementation in progress). */
#include "ring/ring.h"
