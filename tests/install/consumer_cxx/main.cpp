// The C consumer's check, compiled as C++ against the installed headers.
#include "../consumer/main.c"
