// strata/strata.h — everything a user of strata includes.
//
// Thread-safety: see each header.
#pragma once

#include "strata/checkpoint.h"
#include "strata/communicator.h"
#include "strata/data.h"
#include "strata/device.h"
#include "strata/dtype.h"
#include "strata/engine.h"
#include "strata/log.h"
#include "strata/profile.h"
#include "strata/status.h"
#include "strata/units.h"
