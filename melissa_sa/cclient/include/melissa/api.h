/* melissa-sa: Melissa's client API in the layout <melissa/api.h>. */
#ifndef MELISSA_MELISSA_API_H
#define MELISSA_MELISSA_API_H

#include "config.h"
#include "../melissa_api.h"

#endif
