// doctest entry point for the integration tests (real PostgreSQL, real clients, pgsluice).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
