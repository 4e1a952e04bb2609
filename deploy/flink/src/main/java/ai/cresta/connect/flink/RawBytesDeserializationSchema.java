package ai.cresta.connect.flink;

import org.apache.flink.api.common.serialization.AbstractDeserializationSchema;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;

/**
 * Hands each Kinesis record to Python as the exact bytes that were put.
 *
 * <p>Flink ships string and JSON schemas only; the audio-frames stream carries a binary
 * header followed by PCM, which a charset-decoding schema would corrupt.
 */
public final class RawBytesDeserializationSchema extends AbstractDeserializationSchema<byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public byte[] deserialize(byte[] message) {
        return message;
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
        return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }
}
