use densenet::densenet_yaml;

densenet_yaml!("tests/ui/yaml/not_a_mapping.yaml");

fn main() {}
