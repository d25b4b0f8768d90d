/* Strings for the status codes declared in status.h. */
#include "protocol/status.h"

const char *mb_status_str(int status)
{
    switch (status) {
#define MB_STATUS_STR_(name, value, text)                                      \
    case value:                                                                \
        return text;
        MB_STATUS_LIST(MB_STATUS_STR_)
#undef MB_STATUS_STR_
    }
    return "unknown status";
}

const char *mb_status_name(int status)
{
    switch (status) {
#define MB_STATUS_NAME_(name, value, text)                                     \
    case value:                                                                \
        return "MB_STATUS_" #name;
        MB_STATUS_LIST(MB_STATUS_NAME_)
#undef MB_STATUS_NAME_
    }
    return "MB_STATUS_UNKNOWN";
}
