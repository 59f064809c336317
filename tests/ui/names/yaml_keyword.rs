// A YAML spec's name follows the inline syntax's rules.
use densenet::densenet_yaml;

densenet_yaml!("tests/ui/names/yaml_keyword.yaml");

fn main() {}
