// doctest entry point for the unit tests (test/unit/test_<concept>.cc).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
