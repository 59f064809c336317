use densenet::densenet;

// `300u8` used to be read as 300; a suffix is refused at the literal.
densenet!(pub Net<growth: 12, blocks: [6, 6], classes: 300u8>);

fn main() {}
