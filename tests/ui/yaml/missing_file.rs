use densenet::densenet_yaml;

densenet_yaml!("tests/ui/yaml/no_such_spec.yaml");

fn main() {}
