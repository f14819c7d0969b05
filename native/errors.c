/*
 * errors.c - the one message table for shmflags' C error codes.
 *
 * Codes live in the reserved range [SF_ERR_BASE, SF_ERR_LAST] (sf.h), like
 * LMDB's MDB_* codes; module.c maps them to Python exceptions through its
 * own single table.  Runs in any process; no state.
 */
#include "sf.h"

static const char *const messages[] = {
    "snapshot magic or format word mismatch",              /* SF_EFORMAT */
    "snapshot buffer shorter than its header states",      /* SF_ESIZE */
    "offset or count outside its container",               /* SF_ECORRUPT */
    "key not found",                                       /* SF_ENOTFOUND */
    "malformed flag",                                      /* SF_EMALFORMED */
    "Python exception",                                    /* SF_EPYTHON */
    "prerequisite or segment nesting too deep",            /* SF_EDEPTH */
    "snapshot checksum mismatch",                          /* SF_ECHECKSUM */
    "compiled-record format of another build",             /* SF_ERECFORMAT */
};

/**
 * sf_strerror() - describe an error code.
 * @code: SF_OK or one of the SF_E* codes.
 *
 * Return: a static string; never NULL.
 */
const char *sf_strerror(int code)
{
    if (code == SF_OK)
        return "success";
    if (code < SF_ERR_BASE || code > SF_ERR_LAST)
        return "unknown error";
    return messages[code - SF_ERR_BASE];
}
