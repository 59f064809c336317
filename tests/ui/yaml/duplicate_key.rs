use densenet::densenet_yaml;

densenet_yaml!("tests/ui/yaml/duplicate_key.yaml");

fn main() {}
