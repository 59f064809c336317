use densenet::densenet_yaml;

densenet_yaml!("tests/ui/yaml/semantic_error.yaml");

fn main() {}
