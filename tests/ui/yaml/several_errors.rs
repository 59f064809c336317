// Every mistake in the file is reported, each with its file:line:column; the model's
// name (from the file name) still exists, so using it adds no errors.
use densenet::densenet_yaml;

densenet_yaml!("tests/ui/yaml/several_errors.yaml");

fn main() {
    let model = SeveralErrors::init(0);
    let _ = model.forward(densenet::ndarray::Array4::zeros((1, 3, 32, 32)).view());
    let _ = SeveralErrors::PARAMS;
}
