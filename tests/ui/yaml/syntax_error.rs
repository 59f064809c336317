use densenet::densenet_yaml;

densenet_yaml!("tests/ui/yaml/syntax_error.yaml");

fn main() {}
