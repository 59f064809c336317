use densenet::densenet_yaml;

densenet_yaml!("/specs/densenet121.yaml");

fn main() {}
