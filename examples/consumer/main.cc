// The smallest program a user writes against an installed strata: load the default profile,
// validate it and print it. Exit 0 when the library behaves.
#include <strata/strata.h>

#include <iostream>

int main() {
  auto profile = strata::Profile::from_toml_string(strata::Profile::defaults_toml(), "defaults");
  if (!profile) {
    std::cerr << profile.status() << "\n";
    return 1;
  }
  auto bad = strata::Profile::from_toml_string("[memory]\ndevice_budgte = \"1GiB\"\n", "bad.toml");
  if (bad.ok()) {
    std::cerr << "a misspelt key was accepted\n";
    return 1;
  }
  std::cout << "strata " << strata::version() << ": default profile ok; misspelt key refused: "
            << bad.status() << "\n";
  return 0;
}
